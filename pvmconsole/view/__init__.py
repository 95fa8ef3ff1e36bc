"""The console's live view and trace display (docs/view.md): model.py lays out the
frames, source.py samples the hosts, app.py and timeline.py are the full-screen apps."""
