"""The card templates of MODE runs (`*.md`, package data that `modeling_mode.lib.cards` renders) and push.py, the
command line of `modeling_mode.lib.publish`."""
