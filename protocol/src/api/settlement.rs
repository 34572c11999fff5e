//! Settlement's read models (statements, balances, blocks, entries, quarantine, events).
