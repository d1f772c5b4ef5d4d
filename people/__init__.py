"""People, their roles and schools, sign-in, invitations and the administrator's people pages."""
