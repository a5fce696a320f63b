//! The host's own address as Envoy picks it (`Network::Utility::getLocalAddress`): the first
//! non-loopback IPv4 address of the interfaces, in `getifaddrs` order, or 127.0.0.1 when there
//! is none. Envoy appends it to x-forwarded-for when `use_remote_address` is set and the peer
//! is a loopback address, so the conformance cases expect it as `{{host_ip}}`.

use std::net::Ipv4Addr;

pub fn local_ipv4() -> Ipv4Addr {
    let mut found = None;
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we only read, and free once,
    // with freeifaddrs, after the last read.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Ipv4Addr::LOCALHOST;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    found = Some(ip);
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.unwrap_or(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_an_ipv4_address() {
        let ip = super::local_ipv4();
        assert!(!ip.is_unspecified(), "{ip}");
    }
}
