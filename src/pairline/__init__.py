"""pairline: behavioral pairing of contacts and agents for contact-center switches."""

__version__ = "0.1.0"
