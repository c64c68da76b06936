"""scm package."""
