"""The settings: how each is declared, parsed and layered."""
