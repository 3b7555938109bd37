"""The training loop and everything it is made of; it imports no task family."""
