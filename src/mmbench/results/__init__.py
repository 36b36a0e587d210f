"""Results: the versioned JSON schema, atomic storage with resume, and the leaderboard tables."""
