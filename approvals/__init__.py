"""Social-media account applications, SLT decisions gated on training, the account register."""
