package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
)

// Check validates the block as the configuration file gives it (${VAR}
// references expanded) and reads the secret.
func (c *Config) Check() error {
	c.Advertise = Canonical(c.Advertise)
	if u, err := url.Parse(c.Advertise); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("cluster.advertise %q: want this replica's base URL, like http://wharf-0.wharf:5000", c.Advertise)
	}
	c.Advertise = strings.TrimSuffix(c.Advertise, "/")
	switch {
	case len(c.Peers) > 0 && c.DNS != "":
		return errors.New("cluster: set peers or dns, not both")
	case len(c.Peers) > 0:
		for i, p := range c.Peers {
			c.Peers[i] = strings.TrimSuffix(Canonical(p), "/")
		}
		if !slices.Contains(c.Peers, c.Advertise) {
			return fmt.Errorf("cluster.advertise %s is not among cluster.peers: every replica must see the same list", c.Advertise)
		}
	case c.DNS != "":
		if _, _, err := net.SplitHostPort(c.DNS); err != nil {
			return fmt.Errorf("cluster.dns %q: want host:port of a headless Service", c.DNS)
		}
	default:
		return errors.New("cluster: set peers (every replica's base URL) or dns (a headless Service, host:port)")
	}
	if c.SecretFile == "" {
		return errors.New("cluster.secret_file must be set: peer requests carry the fleet's secret")
	}
	b, err := os.ReadFile(c.SecretFile)
	if err != nil {
		return fmt.Errorf("cluster.secret_file: %w", err)
	}
	if c.Secret = strings.TrimSpace(string(b)); len(c.Secret) < 16 {
		return fmt.Errorf("cluster.secret_file %s: the secret must be at least 16 characters", c.SecretFile)
	}
	return nil
}
