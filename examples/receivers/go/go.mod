module example.com/hookrelay-receiver

go 1.22
