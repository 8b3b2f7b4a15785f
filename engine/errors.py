"""Errors the engine raises for bad user input (config, checkpoint, plan). No nanotune import."""


class EngineConfigError(ValueError):
    """A configuration, checkpoint or plan the user gave is invalid; the message names what and where."""
