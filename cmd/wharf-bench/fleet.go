package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// fleetRows are the scale-out scenarios: three replicas sharing a bucket
// (versitygw) as a cluster.
var fleetRows = []string{
	"3 replicas, cold pull through each at once, 4 × 64 MiB",
	"3 replicas: upstream bytes / image",
	"4th replica, empty disk, image in the bucket",
	"4th replica: upstream bytes / image",
}

// fleet measures three wharf processes sharing a bucket as a cluster: the
// big image pulled cold through all three at once (against three direct
// pulls at once), then through a fourth replica on an empty disk (against
// one direct pull). Without versitygw (make test installs it) the rows say
// n/a.
func (b *bench) fleet(up *upstreamtest.Registry, big upstreamtest.Image, set func(scenario, tgt string, v float64)) error {
	for _, r := range fleetRows {
		set(r, "distribution", -1)
	}
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		fmt.Fprintln(os.Stderr, "versitygw not found (make test installs it into bin/): no scale-out figures")
		for _, r := range fleetRows {
			set(r, "wharf", -1)
			set(r, "direct", -1)
		}
		return nil
	}
	fmt.Fprintln(os.Stderr, "measuring three replicas over a bucket...")
	replica, fleet, err := b.startFleet(up, bin)
	if err != nil {
		return err
	}
	size := float64(imageSize(big))
	threeAt := func(url func(i int) string) (float64, error) {
		return timedErr(func() error {
			return parallel(3, 3, func(i int) error { return pull(url(i), big.Repo, big.Tag) })
		})
	}
	d, err := threeAt(func(int) string { return up.URL })
	if err != nil {
		return err
	}
	set(fleetRows[0], "direct", d)
	set(fleetRows[1], "direct", 3)
	up.Reset()
	w, err := threeAt(func(i int) string { return fleet[i].url })
	if err != nil {
		return err
	}
	set(fleetRows[0], "wharf", w)
	set(fleetRows[1], "wharf", float64(up.BytesSent())/size)
	for _, t := range fleet {
		t.stop() // a clean stop waits for the uploads
	}

	d, err = timedErr(func() error { return pull(up.URL, big.Repo, big.Tag) })
	if err != nil {
		return err
	}
	set(fleetRows[2], "direct", d)
	set(fleetRows[3], "direct", 1)
	fourth, err := replica("127.0.0.1:0", "")
	if err != nil {
		return err
	}
	defer fourth.stop()
	up.Reset()
	w, err = timedErr(func() error { return pull(fourth.url, big.Repo, big.Tag) })
	if err != nil {
		return err
	}
	set(fleetRows[2], "wharf", w)
	set(fleetRows[3], "wharf", float64(up.BytesSent())/size)
	return nil
}

// startFleet starts three clustered replicas over a bucket of a fresh
// object store, and returns them with a starter of further replicas over
// the same bucket (cluster: the block, "" for none).
func (b *bench) startFleet(up *upstreamtest.Registry, versitygw string) (replica func(listen, cluster string) (*target, error), fleet []*target, err error) {
	s3 := s3test.StartBinary(b, versitygw)
	secret := filepath.Join(b.TempDir(), "peer")
	if err := os.WriteFile(secret, []byte("bench-fleet-secret-0123"), 0o600); err != nil {
		return nil, nil, err
	}
	var addrs []string
	for range 3 {
		a, err := freeAddr()
		if err != nil {
			return nil, nil, err
		}
		addrs = append(addrs, a)
	}
	replica = func(listen, cluster string) (*target, error) {
		dir := b.TempDir()
		return b.startWharfConfig(dir, fmt.Sprintf(`listen: %q
log_level: info
storage:
  root: %s
  driver: s3
  s3: {bucket: %s, region: us-east-1, regionendpoint: %s, accesskey: %s, secretkey: %s, forcepathstyle: true, secure: false}
%supstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
    tag_ttl: 1h
`, listen, filepath.Join(dir, "store"), s3.Bucket, s3.URL, s3.AccessKey, s3.SecretKey, cluster, up.URL), "")
	}
	peers := "[http://" + strings.Join(addrs, ", http://") + "]"
	for _, a := range addrs {
		t, err := replica(a, fmt.Sprintf("cluster: {peers: %s, advertise: 'http://%s', secret_file: %s}\n", peers, a, secret))
		if err != nil {
			return nil, nil, err
		}
		fleet = append(fleet, t)
	}
	return replica, fleet, nil
}
