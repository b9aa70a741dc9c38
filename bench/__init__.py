"""GPU benchmark of the bot's model service against plain diffusers, on a random-weight Z-Image model."""
