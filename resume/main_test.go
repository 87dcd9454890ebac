package resume_test

import (
	"testing"

	"github.com/dmb-broker/dmb/internal/nodetest"
)

func TestMain(m *testing.M) { nodetest.Main(m) }
