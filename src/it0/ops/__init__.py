"""Operations: what IT0 runs on servers, and the rules that decide who must approve it."""
