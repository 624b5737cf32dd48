package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/wharf-registry/wharf/cluster"
)

// clusterConfig is the cluster: block: the replicas that share a bucket
// and fetch each blob from upstream once between them.
type clusterConfig struct {
	Peers      []string `yaml:"peers"`       // base URLs of every replica, this one included
	DNS        string   `yaml:"dns"`         // or host:port of a headless Service
	Advertise  string   `yaml:"advertise"`   // this replica's own base URL; ${VAR} from the environment
	SecretFile string   `yaml:"secret_file"` // the fleet's shared secret, 16+ characters
	secret     string
}

// check validates the block, expands ${VAR} in advertise (a pod's IP
// comes from the downward API) and reads the secret.
func (c *clusterConfig) check(driver string) error {
	if driver != "s3" {
		return errors.New("cluster needs storage.driver: s3: the replicas share the bucket")
	}
	advertise, err := expandEnv(c.Advertise)
	if err != nil {
		return fmt.Errorf("cluster.advertise: %w", err)
	}
	c.Advertise = cluster.Canonical(advertise)
	if u, err := url.Parse(c.Advertise); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("cluster.advertise %q: want this replica's base URL, like http://wharf-0.wharf:5000", c.Advertise)
	}
	c.Advertise = strings.TrimSuffix(c.Advertise, "/")
	switch {
	case len(c.Peers) > 0 && c.DNS != "":
		return errors.New("cluster: set peers or dns, not both")
	case len(c.Peers) > 0:
		for i, p := range c.Peers {
			c.Peers[i] = strings.TrimSuffix(cluster.Canonical(p), "/")
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
	if c.secret = strings.TrimSpace(string(b)); len(c.secret) < 16 {
		return fmt.Errorf("cluster.secret_file %s: the secret must be at least 16 characters", c.SecretFile)
	}
	return nil
}

// open starts this replica's view of the fleet.
func (c *clusterConfig) open() (*cluster.Cluster, error) {
	return cluster.New(cluster.Config{Peers: c.Peers, DNS: c.DNS, Advertise: c.Advertise, Secret: c.secret})
}
