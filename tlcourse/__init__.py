"""tlcourse: the code behind a notebook course on transfer learning with torchvision ResNets.

The notebooks stay thin; everything they teach is here and usable on its own
(as a library and as ``python -m tlcourse ...``).
"""

__version__ = "0.1.0"


class TLCourseError(Exception):
    """A problem the user can fix: the message names the file or setting and says how."""
