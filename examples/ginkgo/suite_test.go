// A small Ginkgo v2 suite in the shape of our users' reports, run in parallel by `testenv run`:
//
//	testenv run -f ../testenvironment.yaml --workers 4 -- ginkgo -p --procs 4
//
// Every parallel process reaches its own Redis and Kafka. The keys and the topic below have fixed
// names and nothing here computes a port: isolation comes from the environment, not the code.
// The suite fails if two processes ever share a Redis (see claimRedis).
package checkout_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/redis/go-redis/v9"
)

// ownerKey holds the number of the process that claimed this Redis.
const ownerKey = "checkout:owner"

// Read once at suite set-up, like the gatewayURL in the report where a hard-coded
// localhost:8080 broke every parallel process.
var (
	redisURL     string
	kafkaBrokers string
	rdb          *redis.Client
)

func TestCheckout(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Checkout Suite")
}

// own is this process's value of a variable `testenv run` sets for every worker:
// REDIS_URL_0, REDIS_URL_1, ... Workers count from 0; Ginkgo's processes from 1.
func own(name string) string {
	value := os.Getenv(fmt.Sprintf("%s_%s", name, me()))
	if value == "" {
		Fail(fmt.Sprintf("%s_%s is not set: run this suite under `testenv run --workers N -- ginkgo -p --procs M` with N >= M",
			name, me()))
	}
	return value
}

// me is this process's worker number for testenv: GinkgoParallelProcess() counts from 1.
func me() string { return strconv.Itoa(GinkgoParallelProcess() - 1) }

var _ = BeforeSuite(func(ctx SpecContext) {
	redisURL = own("REDIS_URL")
	kafkaBrokers = own("KAFKA_BOOTSTRAP_SERVERS")
	options, err := redis.ParseURL(redisURL)
	Expect(err).NotTo(HaveOccurred())
	rdb = redis.NewClient(options)
	DeferCleanup(rdb.Close)
	Expect(claimRedis(ctx)).To(Succeed())
})

// Before every spec: the Redis this process talks to is still the one it claimed.
var _ = BeforeEach(func(ctx SpecContext) {
	Expect(claimRedis(ctx)).To(Succeed())
})

// claimRedis records this process as the owner of its Redis, or fails if another process did:
// two processes sharing a Redis is the bug this suite exists to catch. A Redis that lost its
// data (a restart) is claimed again.
func claimRedis(ctx context.Context) error {
	claimed, err := rdb.SetNX(ctx, ownerKey, me(), 0).Result()
	if err != nil || claimed {
		return err
	}
	owner, err := rdb.Get(ctx, ownerKey).Result()
	if errors.Is(err, redis.Nil) {
		return claimRedis(ctx)
	}
	if err != nil {
		return err
	}
	if owner != me() {
		return fmt.Errorf("process %s shares its Redis (%s) with process %s", me(), redisURL, owner)
	}
	return nil
}
