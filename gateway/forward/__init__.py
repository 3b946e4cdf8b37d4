"""Store-and-forward: senders per destination kind, and the workers that drive them."""
