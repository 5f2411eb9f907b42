"""voicecalld: a self-hosted phone-call daemon.

This module is imported by ``voicecallctl`` on every run, so it must stay
free of imports: the CLI's start-up time depends on it.
"""

__version__ = "0.1.0"
