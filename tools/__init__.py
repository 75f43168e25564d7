"""The rigs (benchmark, chaos run): developer tools, not shipped in the wheel or the image."""
