"""Compiled scan kernels for the CPU, with the torch kernels as the fallback (docs/server.md)."""
