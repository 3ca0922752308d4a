//! Packet headers of a captured event: Ethernet, ARP, IPv4, IPv6 (extension
//! headers skipped), TCP (flags), UDP, SCTP, ICMPv4, ICMPv6. Only the bytes
//! captured are available: truncated headers leave their fields at zero.

/// What the headers say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ethertype: u16,
    /// 4, 6, or 0 (not IP).
    pub ip_version: u8,
    pub src_ip: u128,
    pub dst_ip: u128,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The L4 header was complete.
    pub l4_complete: bool,
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;

fn be16(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// Decode from the Ethernet header on.
#[must_use]
pub fn decode(packet: &[u8]) -> Headers {
    let mut h = Headers::default();
    let Some(eth) = packet.get(..14) else { return h };
    h.eth_dst.copy_from_slice(&eth[0..6]);
    h.eth_src.copy_from_slice(&eth[6..12]);
    let mut off = 14;
    let mut ethertype = be16(packet, 12).unwrap_or(0);
    if ethertype == ETH_P_8021Q {
        ethertype = be16(packet, 16).unwrap_or(0);
        off = 18;
    }
    h.ethertype = ethertype;
    match ethertype {
        ETH_P_IP => ipv4(&mut h, packet, off),
        ETH_P_IPV6 => ipv6(&mut h, packet, off),
        ETH_P_ARP => arp(&mut h, packet, off),
        _ => {}
    }
    h
}

fn ipv4(h: &mut Headers, p: &[u8], off: usize) {
    let Some(ip) = p.get(off..off + 20) else { return };
    if ip[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    h.ip_version = 4;
    h.protocol = ip[9];
    h.src_ip = u128::from(u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]));
    h.dst_ip = u128::from(u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]));
    let frag_off = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if frag_off != 0 || ihl < 20 {
        return; // a later fragment: no L4 header here
    }
    l4(h, p, off + ihl);
}

fn ipv6(h: &mut Headers, p: &[u8], off: usize) {
    let Some(ip) = p.get(off..off + 40) else { return };
    if ip[0] >> 4 != 6 {
        return;
    }
    h.ip_version = 6;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    h.src_ip = u128::from_be_bytes(src);
    h.dst_ip = u128::from_be_bytes(dst);
    let mut next = ip[6];
    let mut at = off + 40;
    // Hop-by-hop, routing, destination options, fragment: skip to the L4 header.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let Some(ext) = p.get(at..at + 2) else { return };
                next = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            44 => {
                let Some(frag) = p.get(at..at + 8) else { return };
                next = frag[0];
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    h.protocol = next;
                    return; // not the first fragment
                }
                at += 8;
            }
            _ => break,
        }
    }
    h.protocol = next;
    l4(h, p, at);
}

fn arp(h: &mut Headers, p: &[u8], off: usize) {
    // Ethernet/IPv4 ARP: sender and target protocol addresses.
    let Some(a) = p.get(off..off + 28) else { return };
    if u16::from_be_bytes([a[2], a[3]]) != ETH_P_IP {
        return;
    }
    h.src_ip = u128::from(u32::from_be_bytes([a[14], a[15], a[16], a[17]]));
    h.dst_ip = u128::from(u32::from_be_bytes([a[24], a[25], a[26], a[27]]));
}

fn l4(h: &mut Headers, p: &[u8], off: usize) {
    match h.protocol {
        6 => {
            if let Some(t) = p.get(off..off + 14) {
                h.src_port = u16::from_be_bytes([t[0], t[1]]);
                h.dst_port = u16::from_be_bytes([t[2], t[3]]);
                h.tcp_flags = t[13];
                h.l4_complete = true;
            }
        }
        17 | 136 | 132 => {
            if let Some(u) = p.get(off..off + 4) {
                h.src_port = u16::from_be_bytes([u[0], u[1]]);
                h.dst_port = u16::from_be_bytes([u[2], u[3]]);
                h.l4_complete = true;
            }
        }
        1 | 58 => {
            if let Some(i) = p.get(off..off + 2) {
                h.icmp_type = i[0];
                h.icmp_code = i[1];
                h.l4_complete = true;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        p.extend_from_slice(&ethertype.to_be_bytes());
        p
    }

    fn ipv4_hdr(proto: u8, frag: u16) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 40, 0, 1];
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        ip
    }

    #[test]
    fn tcp_over_ipv4_with_flags() {
        let mut p = eth(ETH_P_IP);
        p.extend(ipv4_hdr(6, 0));
        p.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0]);
        let h = decode(&p);
        assert_eq!((h.ip_version, h.protocol, h.src_port, h.dst_port), (4, 6, 12345, 80));
        assert_eq!(h.tcp_flags, 0x12, "SYN-ACK");
        assert_eq!(h.src_ip, u128::from(u32::from_be_bytes([10, 0, 0, 1])));
        assert!(h.l4_complete);
        assert_eq!(h.eth_src, [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn later_fragments_and_truncation_leave_ports_at_zero() {
        let mut p = eth(ETH_P_IP);
        p.extend(ipv4_hdr(17, 100));
        p.extend_from_slice(&[0, 53, 0, 53]);
        let h = decode(&p);
        assert_eq!((h.protocol, h.src_port, h.dst_port, h.l4_complete), (17, 0, 0, false));
        let mut p = eth(ETH_P_IP);
        p.extend(ipv4_hdr(6, 0));
        p.extend_from_slice(&[0, 80]);
        let h = decode(&p);
        assert_eq!((h.protocol, h.l4_complete), (6, false));
        assert_eq!(decode(&p[..20]).ip_version, 0, "a cut IPv4 header is not IP");
    }

    #[test]
    fn icmp_udp_sctp_and_ipv6_with_extension_headers() {
        let mut p = eth(ETH_P_IP);
        p.extend(ipv4_hdr(1, 0));
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        let h = decode(&p);
        assert_eq!((h.protocol, h.icmp_type, h.icmp_code), (1, 8, 0));
        let mut p = eth(ETH_P_IP);
        p.extend(ipv4_hdr(132, 0));
        p.extend_from_slice(&[0x0b, 0x59, 0x0b, 0x5a, 0, 0, 0, 0]);
        assert_eq!(decode(&p).dst_port, 2906);

        let mut p = eth(ETH_P_IPV6);
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 16, 0 /* hop-by-hop */, 64];
        ip6.extend_from_slice(&[0xfd; 16]);
        ip6.extend_from_slice(&[0xfe; 16]);
        p.extend(ip6);
        p.extend_from_slice(&[58, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop, next ICMPv6
        p.extend_from_slice(&[128, 0, 0, 0]); // echo request
        let h = decode(&p);
        assert_eq!((h.ip_version, h.protocol, h.icmp_type), (6, 58, 128));
        assert_eq!(h.src_ip, u128::from_be_bytes([0xfd; 16]));
    }

    #[test]
    fn arp_addresses() {
        let mut p = eth(ETH_P_ARP);
        p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        let h = decode(&p);
        assert_eq!((h.ip_version, h.src_ip, h.dst_ip), (0, u128::from(0x0a00_0005u32), u128::from(0x0a00_0001u32)));
    }
}
