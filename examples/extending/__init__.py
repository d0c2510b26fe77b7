"""Templates for extending hcmarl (docs/extending.md): a new surrogate, a new env family, a new role.

Each file is short and complete: copy it into your own package, rename, fill in.
"""
