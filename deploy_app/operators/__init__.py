"""The application's operators, one a file."""
