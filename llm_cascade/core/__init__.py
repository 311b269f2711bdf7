"""The cascade itself: values, errors, the router, agreement rules, normalizers and learned deferral."""
