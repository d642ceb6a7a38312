"""One module per numbered notebook: its pipeline from parameters to tables, and its findings text."""
