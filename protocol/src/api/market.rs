//! The market engine's read models (status, participants).
