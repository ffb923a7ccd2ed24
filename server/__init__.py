"""The coordinator: a Flower ServerApp. It never imports the data loaders."""
