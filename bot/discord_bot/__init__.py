"""The Discord side: the client, how jobs look in messages, delivery, and the error tree."""
