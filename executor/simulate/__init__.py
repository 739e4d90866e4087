"""The active-learning simulator (`start.py simulate`)."""
