"""zimage-bot: a self-hosted Discord bot for Z-Image-Turbo."""
