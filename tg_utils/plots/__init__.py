"""Figures of the notebooks, one module per family; each returns the figure and the tidy table of the numbers it draws."""
