"""How long-running processes live through the loss of what they depend on: back-off and a health record."""
