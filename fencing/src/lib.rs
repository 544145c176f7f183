//! Fencing: ordered levels of bounded fencing methods and fencing tokens.
