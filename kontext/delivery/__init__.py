"""Outbound traffic: the address guard, image downloads, and callback delivery."""
