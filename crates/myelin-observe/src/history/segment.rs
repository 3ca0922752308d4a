//! Segment files: blocks appended one after the other, each in a frame
//! whose header checks itself, so that a reader can tell a whole block from a
//! torn or damaged one and find the next whole block after damage.
//!
//! ```text
//!  frame: magic u32 | payload length u32 | check u32 (of magic and length) | payload
//! ```
//!
//! The dictionary log uses the same frames (payload: id u32, JSON, checksum u64).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::codec::{self, BlockHeader};

/// Magic of a block frame ("MYFB").
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"MYFB");
/// Magic of a dictionary frame ("MYFD").
pub const DICT_MAGIC: u32 = u32::from_le_bytes(*b"MYFD");
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 12;
/// No frame is larger than this (a block of a million records is far smaller).
const MAX_FRAME: u32 = 256 << 20;

fn header_check(magic: u32, len: u32) -> u32 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&magic.to_le_bytes());
    b[4..].copy_from_slice(&len.to_le_bytes());
    codec::checksum(&b) as u32
}

/// The header of a frame of `len` payload bytes.
#[must_use]
pub fn frame_header(magic: u32, len: u32) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..].copy_from_slice(&header_check(magic, len).to_le_bytes());
    h
}

/// The payload length of a valid frame header.
fn parse_frame_header(b: &[u8], magic: u32) -> Option<u32> {
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if b.len() < FRAME_HEADER || word(0) != magic {
        return None;
    }
    let len = word(4);
    (word(8) == header_check(magic, len) && len <= MAX_FRAME).then_some(len)
}

/// Where a block is and what its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Offset of the payload (the encoded block) in the segment file.
    pub offset: u64,
    pub len: u32,
    pub header: BlockHeader,
}

/// What reading a segment's frames found.
#[derive(Debug, Default)]
pub struct Scan {
    pub blocks: Vec<BlockRef>,
    /// End of the last whole frame: the file's valid length.
    pub valid_len: u64,
    /// Bytes between whole frames that were not frames (damage).
    pub skipped: u64,
}

/// Read the frames of a segment of `len` bytes: only their headers and the blocks'
/// fixed headers (blocks are checked in full when a query reads them).
pub fn scan(file: &File, len: u64) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let mut at = 0u64;
    let mut head = [0u8; FRAME_HEADER + codec::HEADER_LEN];
    while at < len {
        match frame_at(file, at, len, &mut head)? {
            Some(b) => {
                at = b.offset + u64::from(b.len);
                out.valid_len = at;
                out.blocks.push(b);
            }
            None => match resync(file, at + 1, len, &mut head)? {
                Some(next) => {
                    out.skipped += next - at;
                    at = next;
                }
                None => break,
            },
        }
    }
    Ok(out)
}

/// The block whose frame starts at `at`, if it is one.
fn frame_at(file: &File, at: u64, len: u64, head: &mut [u8]) -> std::io::Result<Option<BlockRef>> {
    if at + head.len() as u64 > len {
        return Ok(None);
    }
    file.read_exact_at(head, at)?;
    let Some(plen) = parse_frame_header(head, BLOCK_MAGIC) else { return Ok(None) };
    let offset = at + FRAME_HEADER as u64;
    if offset + u64::from(plen) > len {
        return Ok(None);
    }
    match codec::parse_header(&head[FRAME_HEADER..], plen as usize) {
        Ok(header) => Ok(Some(BlockRef { offset, len: plen, header })),
        Err(_) => Ok(None),
    }
}

/// The next offset at or after `from` where a whole block frame starts.
fn resync(file: &File, from: u64, len: u64, head: &mut [u8]) -> std::io::Result<Option<u64>> {
    let magic = BLOCK_MAGIC.to_le_bytes();
    let mut window = vec![0u8; 1 << 16];
    let mut base = from;
    while base < len {
        let n = usize::try_from((len - base).min(window.len() as u64)).unwrap_or(window.len());
        file.read_exact_at(&mut window[..n], base)?;
        for i in 0..n.saturating_sub(3) {
            if window[i..i + 4] == magic && frame_at(file, base + i as u64, len, head)?.is_some() {
                return Ok(Some(base + i as u64));
            }
        }
        // Overlap by three bytes so a magic across windows is found.
        base += (n.saturating_sub(3)).max(1) as u64;
    }
    Ok(None)
}

/// The payloads of the whole dictionary frames in `file`, and the valid length.
pub fn read_dict_frames(file: &mut File) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
    let mut all = Vec::new();
    file.read_to_end(&mut all)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut valid = 0u64;
    while at + FRAME_HEADER <= all.len() {
        let Some(plen) = parse_frame_header(&all[at..at + FRAME_HEADER], DICT_MAGIC) else {
            // Damage: look for the next frame.
            at += 1;
            continue;
        };
        let start = at + FRAME_HEADER;
        let Some(end) = start.checked_add(plen as usize).filter(|e| *e <= all.len()) else {
            at += 1;
            continue;
        };
        out.push(all[start..end].to_vec());
        at = end;
        valid = end as u64;
    }
    Ok((out, valid))
}
