"""backout: deploy a serverless job service under watch and back it out in seconds."""

__version__ = "0.1.0"
