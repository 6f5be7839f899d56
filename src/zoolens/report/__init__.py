"""Figures and the HTML report, built from analysis results."""
