"""Discord features, one a module, each loaded as a discord.py extension."""
