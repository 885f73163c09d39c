"""Enrichers named by URI: parsing, the scheme registry, plugins, and the one
masking of secrets that every message, plan and report goes through."""
