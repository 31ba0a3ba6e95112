"""screener: a self-hosted call screener for a home VoIP line."""

__version__ = "0.1.0"
