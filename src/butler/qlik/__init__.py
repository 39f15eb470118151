"""Clients of Qlik Sense: the Repository Service (QRS) and, later, the Engine."""
