"""brainbench: how good is a frozen brain-MRI encoder, across nine endpoints, as labels get scarce?"""

__version__ = "0.1.0"
