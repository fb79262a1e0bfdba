"""What every test suite shares: test servers, hostile users, stand-ins, waiting."""
