"""What every Inventiv service shares: settings, database, state machine, wire types, keys."""
