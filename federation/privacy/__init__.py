"""Differential privacy as data: events describe every release; accountants interpret them."""
