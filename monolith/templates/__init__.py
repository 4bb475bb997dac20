"""Jinja2 templates of the monolith (a package so that installs ship the *.html files)."""
