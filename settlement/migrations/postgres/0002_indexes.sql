-- Sealing a block looks up the entries not yet in a block; proofs and block views look up a
-- block's entries; statements are listed per participant.
CREATE INDEX entries_by_block ON entries (block_height);
CREATE INDEX statements_by_participant ON statements (participant, interval_start);
