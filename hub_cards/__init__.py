"""push.py, the command line of `modeling_mode.lib.publish`; the card templates it renders are package data of
`modeling_mode.lib.hub` (`templates/`)."""
