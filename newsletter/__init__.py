"""Compile the week's articles into one responsive HTML issue and mail it to every subscriber."""

__version__ = "0.1.0"
